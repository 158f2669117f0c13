"""Records in the Django database, under the table's unique constraint.

How a duplicate learns, without waiting, that the first request is in flight
==========================================================================

The claim is a row inserted in the same transaction as the handler's own
writes, and the stored response is written by the same transaction before it
commits: no extra commit, and a crash rolls back the effects and the claim
together, so the handler's effects are never kept without their response.
The database's unique constraint makes the claim exclusive: one request per
key runs the handler. The one difficulty is that a plain ``INSERT`` of a
duplicate key waits for the first transaction to finish, whereas a duplicate
must get its 409 at once. Each database gets that answer within the claim
statement:

* PostgreSQL (``postgresql.py``): the insert is guarded by
  ``pg_try_advisory_xact_lock`` on a hash of (scope, key) in the same
  statement. Every writer of a key holds that lock until its transaction
  ends, so a duplicate that cannot take it knows the key is in flight without
  touching the row. The same statement sets
  ``idle_in_transaction_session_timeout`` to ``LOCK_TIMEOUT`` for this
  transaction only, so that a worker that hangs or vanishes without closing
  its connection loses its claim after ``LOCK_TIMEOUT``, and the key is not
  held forever.
* MariaDB (``mysql.py``): ``SET STATEMENT innodb_lock_wait_timeout=0 FOR
  INSERT`` fails at once with error 1205 while another transaction holds the
  key, and with 1062 when a committed record exists. InnoDB rolls back only
  the failed statement, so the transaction stays usable.
* SQLite (``sqlite.py``) serialises writers: a duplicate waits for the first
  transaction (up to the connection's ``timeout``), then finds its record and
  replays it; if the wait runs out it gets its 409.

A worker that dies loses its connection, and the database rolls back its
transaction: the claim disappears with the effects, and a retry runs the
handler once. A record whose expiry has passed (a completed one after its
TTL, or one left in flight by a commit the package did not make) is taken
over by an ``UPDATE`` that repeats the expiry test, so two requests can never
both take it over, nor can the purge delete a record that was just renewed.

The modules: ``store`` (the :class:`DatabaseStore`), ``statements`` (the SQL
every database shares, built once per alias), ``base`` (what a dialect
offers), one module per database, and ``dialects`` (which one a connection
gets).
"""

from .dialects import UnsupportedDatabase, dialect_for
from .mysql import MARIADB, MAX_ALLOWED_PACKETS, max_allowed_packet
from .statements import COLUMNS
from .store import DatabaseStore

__all__ = [
    "COLUMNS",
    "MARIADB",
    "MAX_ALLOWED_PACKETS",
    "DatabaseStore",
    "UnsupportedDatabase",
    "dialect_for",
    "max_allowed_packet",
]
