"""SMS and voice calls through Twilio: the ``twilio_sms`` and ``twilio_voice`` adapter kinds,
their webhooks, and a fake Twilio API server for tests, benchmarks and the demo."""
