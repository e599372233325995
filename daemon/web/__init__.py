"""The web side: bottle app, WebSocket feed and the GUI's static files."""
