"""stepstone's benchmark: stepstone against the physical limit and DBOS Transact (issue 5).

Run it with `bench/run` from the repository root; see bench/README.md.
"""
