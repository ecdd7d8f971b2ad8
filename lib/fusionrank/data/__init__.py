"""Raw data adapters: public data sets to fusionrank's canonical raw input."""
