"""Models: ATST-Frame backbone, ATST-SED CRNN, checkpoint loading, long-audio windowing."""
