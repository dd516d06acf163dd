"""Metrics text: counters and histogram buckets a Prometheus scraper can read."""

from tolerance import U64, gamma

from runtime.metrics import Metrics, parse


def test_histogram_is_cumulative_and_counts_match() -> None:
    m = Metrics()
    for s in (0.001, 0.2, 0.2, 7.0, 1000.0):
        m.observe("Infer", "OK", s)
    m.observe("Infer", "INVALID_ARGUMENT", 0.001)
    v = parse(m.render({"cerberus_key_cache_bytes": 42}))
    assert v['cerberus_requests_total{method="Infer",code="OK"}'] == 5
    assert v['cerberus_requests_total{method="Infer",code="INVALID_ARGUMENT"}'] == 1
    assert v['cerberus_request_seconds_bucket{method="Infer",le="0.01"}'] == 2
    assert v['cerberus_request_seconds_bucket{method="Infer",le="0.25"}'] == 4
    assert v['cerberus_request_seconds_bucket{method="Infer",le="+Inf"}'] == 6
    assert v['cerberus_request_seconds_count{method="Infer"}'] == 6
    # a float64 sum of 6 (γ_6, the decimals' own rounding, γ_7 in all), rendered with 6
    # decimals (half a unit: 5e-7)
    got = v['cerberus_request_seconds_sum{method="Infer"}']
    assert abs(got - 1007.402) <= 0.5e-6 + gamma(7, U64) * 1007.402
    assert v["cerberus_key_cache_bytes"] == 42
