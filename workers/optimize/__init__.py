"""`/prompt optimize`: the search behind it (split, search space, race, proposer).

The runner (workers/runners/optimize.py) glues these to a job; every piece here is pure or
takes its model as an argument, so unit tests drive it with a fake scorer.
"""
