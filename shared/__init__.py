"""Code both services share: settings, schemas, rules, Redis state, the agent webhook, Flask wiring."""
