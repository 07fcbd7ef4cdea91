"""Train a generative model: `python train.py model=vae data=mnist`. See configs/train.yaml."""

from genlab.train import main

if __name__ == "__main__":
    main()
