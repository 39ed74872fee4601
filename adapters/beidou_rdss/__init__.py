"""BeiDou RDSS short-message terminals on a serial port (``$CCTXA`` / ``$BDFKI`` / ``$BDTXR``)."""
