"""AppKeys shared by the handlers."""

from __future__ import annotations

from aiohttp import web

from appliance.bundles.service import BundleService
from appliance.cache import ImageCache
from appliance.config import Config
from appliance.events import EventLog
from appliance.hublink import HubLink
from appliance.images import ImageService
from appliance.imports import ImportService
from appliance.members import MemberService
from appliance.metadefs import MetadefService
from appliance.metrics import Metrics
from appliance.sites import SiteService

CONFIG = web.AppKey("config", Config)
IMAGES = web.AppKey("images", ImageService)
IMPORTS = web.AppKey("imports", ImportService)
MEMBERS = web.AppKey("members", MemberService)
METADEFS = web.AppKey("metadefs", MetadefService)
EVENTS = web.AppKey("events", EventLog)
STARTED = web.AppKey("started", float)
METRICS = web.AppKey("metrics", Metrics)
SITES = web.AppKey("sites", SiteService)
# Optional services: AppKey's second argument must be a class, so their type is declared instead.
CACHE: web.AppKey[ImageCache | None] = web.AppKey("cache")
BUNDLES = web.AppKey("bundles", BundleService)
HUB: web.AppKey[HubLink | None] = web.AppKey("hub")
