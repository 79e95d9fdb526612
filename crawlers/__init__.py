"""The Scrapy project that collects radiographic descriptions."""
