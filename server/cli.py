def main() -> None:
    raise SystemExit("refllama: no subcommands yet")
