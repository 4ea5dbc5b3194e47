"""pefteval: does parameter-efficient fine-tuning lose to full fine-tuning, and why?"""

__version__ = "0.1.0"
