"""The WebSocket wire: frames, the opening handshake and the connection protocol.

The bottom layer: it imports nothing else of the gateway. RFC 6455 parsing of
what clients send is websockets' sans-I/O `ServerProtocol`; this layer owns
the I/O around it and the server's own pre-built frames.
"""
