"""civitai-daemon: manifests in, verified model files out."""
__version__ = "0.1.0"
