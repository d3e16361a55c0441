"""For trying tokengate out, not for production: demo (``./dev.sh demo``: a gateway on memory://
with two accounts and printed curl lines) and echo (an upstream that answers what it received).

May import anything.
"""
