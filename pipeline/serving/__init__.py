"""Reaching TensorFlow Serving: a client for any TF Serving, serving profiles, and the backends that start them."""
