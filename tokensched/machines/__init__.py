"""The three machines the scheduler moves: requests, KV blocks, steps.

Nothing here knows about policies, executors, HTTP or torch.
"""
