def test_cli_constants_agree_with_the_golden_modules() -> None:
    from server.golden import command, compare, record

    assert command.APIS == compare.APIS
    assert command.DEFAULT_TOP_LOGPROBS == record.DEFAULT_TOP_LOGPROBS
