"""Webhook notifications: who is told what, and when.

* ``outbox``: a notification is recorded in the transaction of the change it reports;
* ``targets``: which webhooks get it, and the address checks that keep a user's webhook out of
  the controller's own network;
* ``deliver``: the ``Notifier`` thread that signs, sends and retries.
"""
