"""Cases: many fields of one blood sample, stored, summarised, reviewed and signed off, with users and an audit trail.

The parts: ``config`` (where the database and images live), ``db`` (engine, sessions, migrations), ``models`` (the
tables), ``store`` (content-addressed image files), ``users`` (roles, passwords, API tokens), ``rule`` (the case
call), ``service`` (what the web views and the CLI call). The serving path: no torch here.
"""
