# mypy must refuse this file: a waiting request holds no blocks, and the match must be exhaustive.
from typing import assert_never

from tokensched.machines.request import Decoding, Prefilling, Request, RequestState, Waiting


def blocks_of_waiting(state: Waiting) -> list[int]:
    return state.blocks  # error: "Waiting" has no attribute "blocks"


def blocks_of_any(request: Request) -> list[int]:
    return request.state.blocks  # error: not every state has blocks


def forgets_a_state(state: RequestState) -> int:
    match state:
        case Prefilling() | Decoding():
            return 1
        case Waiting():
            return 0
        case _:
            assert_never(state)  # error: Preempted and Finished are not handled
