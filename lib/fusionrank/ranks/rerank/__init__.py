"""The learned second stage (issue 15): candidates, features and a LambdaRank model."""
