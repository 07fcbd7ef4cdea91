"""Score a checkpoint or a folder of images: `python evaluate.py ckpt_path=<model.ckpt> data=mnist`."""

from genlab.evaluate import main

if __name__ == "__main__":
    main()
