"""The serial layer shared by the serial-attached kinds (GSM and satellite modems, BeiDou
terminals, wireless-broadcast transmitters): one task owning each port and reopening it after
an unplug (:mod:`.link`), AT command exchange for modems (:mod:`.at`), sentence splitting
(:mod:`.lines`), and the pseudo-terminal device base their simulators build on
(:mod:`.pty_device`)."""
