"""Iridium 9602/9603 Short Burst Data transceivers: the ``iridium_sbd`` adapter kind
(adapter.py), Tocsin's compact warning encoding (compact.py), the transceiver's answers
(status.py) and a transceiver simulator (simulator.py, ``tocsin simulate modem --profile
iridium``). Import the submodules; this package imports nothing."""
