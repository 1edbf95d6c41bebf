"""Scheduler backends behind one small interface: submit / poll / cancel (see ``base``)."""
