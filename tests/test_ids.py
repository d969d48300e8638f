from corral.ids import IdGenerator, id_timestamp


def test_ids_strictly_increase_and_carry_their_time() -> None:
    generator = IdGenerator()
    ids = [generator.new() for _ in range(10_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(len(job_id) == 26 for job_id in ids)
    import time

    assert abs(id_timestamp(ids[-1]) - time.time()) < 5
