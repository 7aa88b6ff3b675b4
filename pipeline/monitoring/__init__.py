"""Production monitoring on live traffic: input drift against the training snapshot, prediction drift, live
accuracy, and what to do when they stay off (alert, retrain).

- :mod:`.features`    per-model live features (digits: ink, position, size, stroke; e-mails: length, OOV, tokens)
- :mod:`.reference`   the reference: those features on the stable version's training snapshot
- :mod:`.divergence`  the tests of one window against the reference (KS + Holm, chi-square/JS, accuracy)
- :mod:`.expectations` the same window through Great Expectations (means within the reference's bounds)
- :mod:`.window`      the captured live window of a model (inputs, predictions, labels) from the capture store
- :mod:`.report`      the run's HTML page and plots
- :mod:`.monitor`     one monitor run: window -> tests -> report -> registry -> alert / retrain
- :mod:`.shifts`      known shifts of real digits ("new scanner") for tests, the bench and the demo
"""
