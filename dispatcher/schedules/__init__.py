"""Scheduled test broadcasts and drills (docs/schedules.md).

- :mod:`.timing`: cron expressions in Asia/Shanghai, quiet hours, and which fire times are due
  (pure functions of the trigger, the last run and the clock);
- :mod:`.spec`: a schedule as the config and the API give it;
- :mod:`.service`: schedules in the store, and one run: claim the fire time, make the Test or
  Exercise warning, record the outcome;
- :mod:`.runner`: the AsyncIOScheduler that fires them, the catch-up at start, the report after
  each run.
"""
