"""advforensics: forensic investigation of adversarial attacks on image classifiers.

Two capabilities share one data, model and attack layer:
- proactive tracing (separate-and-trace): name the model copy an adversarial example came from;
- passive attribution (MTAA): recognise attack, victim and attack strength from the example alone.
"""

__version__ = "0.1.0"
