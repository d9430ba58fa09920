"""The worker process: claims Pending executions and runs them (see issue 3)."""


def main():
    raise SystemExit("the worker is not built yet")


if __name__ == "__main__":
    main()
