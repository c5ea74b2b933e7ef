"""The scheduler: fires cron, interval and one-shot schedules onto JetStream, exactly once per fire."""
