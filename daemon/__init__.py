"""civitai-daemon: manifests in, verified model files out."""
__version__ = "0.1.0"
# Civitai's edge blocks some default client agents; an honest, specific one is welcome.
USER_AGENT = f"civitai-daemon/{__version__}"
