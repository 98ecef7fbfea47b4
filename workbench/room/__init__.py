"""The workshop room: one server, many attendees, one instructor.

* ``people``: who is asking (an attendee's name, checked; the instructor).
* ``ledger``: the room's SQLite ledger (WAL): who owns which run, when it queued, started
  and ended, and the exercises with their locked settings.
* ``store``: ``RoomStore``: each attendee's runs in the project's run store under a folder of
  their own, the ledger beside them; an attendee sees and deletes only their own runs.
* ``queue``: the fair run queue on Ray (first come first served, at most N runs at once, at
  most one running run per attendee).
* ``room``: ``Room``: the three together, and the train function the panel calls.
* ``classroom``: the instructor's view: tables and figures of the room's runs.

Layer: above ``records`` (it stores runs through the run store), below ``ui`` (the panel
shows the queue's state).
"""
