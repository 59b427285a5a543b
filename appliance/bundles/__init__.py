"""Images carried to sites the hub never reaches: portable bundles and the inbox.

- manifest: what a bundle says about its images (ImageRecord, Manifest)
- signing: ed25519 keys, manifest.sig and the signature policy
- stream: the bundle file's format, its streaming writer and reader, verify_bundle
- report: what an import or a check did to each image
- service: BundleService, the import into this site's catalog and stores
- inbox: the watched directory where bundles and plain images arrive on removable media

The operator's side (export, send, verify, keygen) is appliance.commands.bundle.
"""
