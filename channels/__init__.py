"""Channel adapters: each turns a platform's requests into InboundMessages and sends replies."""
