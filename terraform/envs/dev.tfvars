environment           = "dev"
region                = "us-east-1"
github_repository_url = "https://github.com/example-org/distracted-driver.git"
github_branch         = "main"

# One small instance; scale to two under load.
serving_instance_type     = "ml.c5.large"
autoscaling_min_instances = 1
autoscaling_max_instances = 2

api_throttle_rate_limit  = 20
api_throttle_burst_limit = 40
api_quota_per_day        = 20000

endpoint_name = "distracted-driver-dev"
force_destroy = true
