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


def prompts_as_buffers() -> list[object]:
    # No error: RequestSpec takes the buffers its validator accepts, so an engine holding a numpy array or an
    # array('i') of token ids passes it as it is, without a cast.
    import array

    import numpy as np

    from tokensched import RequestSpec

    ids = np.arange(1, 9, dtype=np.int32)
    return [
        RequestSpec(request_id="n", prompt_token_ids=ids, max_tokens=1),
        RequestSpec(request_id="a", prompt_token_ids=array.array("i", [1, 2]), max_tokens=1),
        RequestSpec(request_id="l", prompt_token_ids=[1, 2], max_tokens=1),
    ]
