"""Wireless-broadcast transmitters (无线预警广播) on a serial line: the ``serial_transmitter``
adapter kind (adapter.py), its protocol as framing profiles (messages.py, framing.py,
profiles.py; PROTOCOL.md) and a simulator of transmitters on a pseudo-terminal
(simulator.py, ``tocsin simulate modem --profile transmitter``). Import the submodules; this
package imports nothing."""
