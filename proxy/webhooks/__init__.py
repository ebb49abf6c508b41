"""Inbound webhooks: Vipps -> proxy -> the legacy app, verified, durable, in order.

The map, one concept per module:

- ``verify``: Vipps' HMAC-SHA256 webhook signature, checked exactly (and made, for
  the emulator and tests)
- ``store``: ``Store``, the events in SQLite (WAL, synchronous=FULL), deduplicated,
  handed out oldest first per payment
- ``receive``: ``Receiver``, the inbound handler: 413, 401, the 2xx after the commit,
  eCom's synchronous paths proxied at once
- ``deliver``: ``Deliverer``, the loop that sends events to the app with backoff
- ``lease``: ``Lease``, the file lock that makes one process of many the deliverer
- ``metrics``: received, delivered, pending and oldest-pending metrics
- ``service``: ``WebhookRelay``, the above put together for one app, started and
  closed with it
- ``commands``: ``vipps-proxy webhooks list | retry | register``
"""
