"""Consume shoal heartbeats from the exchange as the shoal server would; print them as JSON lines.

Usage: python3 consume_heartbeats.py USER PASSWORD VHOST EXCHANGE COUNT TIMEOUT
Exits 2 when fewer than COUNT heartbeats arrive within TIMEOUT seconds.
"""

import json
import sys
import time

import pika

user, password, vhost, exchange, count, timeout = sys.argv[1:7]
parameters = pika.ConnectionParameters(
    host="localhost", virtual_host=vhost, credentials=pika.PlainCredentials(user, password)
)
connection = pika.BlockingConnection(parameters)
channel = connection.channel()
# Declared exactly as shoal-server declares it (a non-durable topic exchange).
channel.exchange_declare(exchange=exchange, exchange_type="topic")
queue = channel.queue_declare(queue="", exclusive=True).method.queue
channel.queue_bind(queue=queue, exchange=exchange, routing_key="#")

received = []
deadline = time.monotonic() + float(timeout)
for method, properties, body in channel.consume(queue, inactivity_timeout=1):
    if method is not None:
        received.append({"routing_key": method.routing_key, "content_type": properties.content_type,
                         "received": time.time(), "body": json.loads(body)})
    if len(received) >= int(count) or time.monotonic() > deadline:
        break
connection.close()
for message in received:
    print(json.dumps(message))
sys.exit(0 if len(received) >= int(count) else 2)
