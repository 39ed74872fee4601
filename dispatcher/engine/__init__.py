"""The engine: claims due deliveries, sends them through adapters, records outcomes, takes in
acknowledgements, and runs the timers (acknowledgement deadlines, escalation, expiry).

Each stage is its own module and tested alone: :mod:`backoff`, :mod:`rate_limit`,
:mod:`breaker`, :mod:`decide`, :mod:`message_text`, :mod:`adapter_host`, :mod:`ack_intake`;
:mod:`engine` runs them.
"""
