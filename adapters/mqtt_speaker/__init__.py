"""Village loudspeakers (大喇叭) over MQTT: the ``mqtt_speaker`` adapter kind (adapter.py), its
protocol (protocol.py, PROTOCOL.md) and a fleet simulator (simulator.py,
``tocsin simulate speakers``). Import the submodules; this package imports nothing, so the
simulator runs without the adapter's dependencies on the daemon."""
