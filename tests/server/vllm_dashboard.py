"""The metrics vLLM's published Grafana dashboard queries: name, type, and the labels it filters or groups by.

Read from vllm-project/vllm ``examples/online_serving/prometheus_grafana/grafana.json``
at commit 004f771f3a6b49597546b05c7d83686d1e121fa0 (every ``expr`` of every panel, and the
``model_name`` template variable, which is ``label_values({__name__=~"vllm:.*"}, model_name)``).
Only this list is kept here, not the dashboard. Histograms are queried through their
``_bucket`` (by ``le``), ``_sum`` and ``_count`` series.
"""

from __future__ import annotations

DASHBOARD_METRICS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("vllm:e2e_request_latency_seconds", "histogram", ("model_name",)),
    ("vllm:prompt_tokens_total", "counter", ("model_name",)),
    ("vllm:generation_tokens_total", "counter", ("model_name",)),
    ("vllm:time_per_output_token_seconds", "histogram", ("model_name",)),
    ("vllm:num_requests_running", "gauge", ("model_name",)),
    ("vllm:num_requests_waiting", "gauge", ("model_name",)),
    ("vllm:time_to_first_token_seconds", "histogram", ("model_name",)),
    ("vllm:gpu_cache_usage_perc", "gauge", ("model_name",)),
    ("vllm:request_prompt_tokens", "histogram", ("model_name",)),
    ("vllm:request_generation_tokens", "histogram", ("model_name",)),
    ("vllm:request_success_total", "counter", ("model_name", "finished_reason")),
    ("vllm:request_queue_time_seconds", "histogram", ("model_name",)),
    ("vllm:request_prefill_time_seconds", "histogram", ("model_name",)),
    ("vllm:request_decode_time_seconds", "histogram", ("model_name",)),
    ("vllm:request_max_num_generation_tokens", "histogram", ("model_name",)),
)
