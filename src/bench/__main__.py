"""`python -m src.bench`: how close the training loops come to the machine's matmul rate."""

from src.bench.run import main

if __name__ == "__main__":
    main()
