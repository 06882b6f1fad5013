"""The domain at the bottom: rules, recommendation, price, usage history, episodes, payload shapes; no I/O."""
