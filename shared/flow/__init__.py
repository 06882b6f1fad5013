"""What a request does with a payload: store, judge, claim and deliver; and the redelivery of failed triggers."""
