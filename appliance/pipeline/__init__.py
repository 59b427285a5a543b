"""The import pipeline: staged data → inspection → plugins in order → hashing → stores."""
