"""camelid.quant"""
