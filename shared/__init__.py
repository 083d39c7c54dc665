"""Code that the booking API, the gateway and other booking backends share."""
