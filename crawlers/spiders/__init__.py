"""Spiders of the devide crawler, one per source profile: encyclopedia, mediawiki, generic."""
