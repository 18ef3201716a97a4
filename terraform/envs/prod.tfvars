environment           = "prod"
region                = "us-east-1"
github_repository_url = "https://github.com/example-org/distracted-driver.git"
github_branch         = "main"

# Two instances at all times, so a canary step is a real share of the fleet.
serving_instance_type     = "ml.c5.xlarge"
autoscaling_min_instances = 2
autoscaling_max_instances = 8

api_throttle_rate_limit  = 200
api_throttle_burst_limit = 400
api_quota_per_day        = 1000000

endpoint_name = "distracted-driver"
force_destroy = false
